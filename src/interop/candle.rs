//! candle hand-off (feature `candle`): every tensor of a checkpoint as a
//! [`candle_core::Tensor`] ([`load`]), one tensor ([`to_tensor`]), and a lazy
//! [`candle_nn::VarBuilder`] over an opened checkpoint ([`var_builder`], [`PtfileBackend`])
//! for building candle-nn models from `.pt` / `.pth` / `.bin` files: every format ptfile reads
//! (zip, legacy, tar, TorchScript, whole pickled modules), strided views made contiguous,
//! big-endian files and conj/neg views resolved.
//!
//! ```
//! use ptfile::candle::{candle_core::{DType, Device, Module}, candle_nn};
//! # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
//! let dev = Device::Cpu;
//! let all = ptfile::candle::load(path, &dev)?;           // HashMap<String, candle_core::Tensor>
//! println!("{} tensors", all.len());
//!
//! let vb = ptfile::candle::var_builder(path, DType::F32, &dev)?; // nothing read yet
//! let w = vb.get((2, 4), "l0.weight")?;                   // read and shape-checked on demand
//! let l0 = candle_nn::linear(4, 2, vb.pp("l0"))?;
//! let y = l0.forward(&candle_core::Tensor::ones((1, 4), DType::F32, &dev)?)?;
//! assert_eq!(y.dims(), &[1, 2]);
//! # let _ = w;
//! # Ok::<(), candle_core::Error>(())
//! ```
//!
//! # Dtypes
//!
//! | torch | candle | how |
//! |---|---|---|
//! | uint8, uint32, int16, int32, int64, bfloat16, float16, float32, float64 | the same | bytes as they are |
//! | float8_e4m3fn | `F8E4M3` | bytes as they are |
//! | float8_e8m0fnu | `F8E8M0` | bytes as they are (a storage-only dtype in candle) |
//! | bool | `U8` | 0 / 1 (candle has no bool; its comparisons give `U8` masks too) |
//! | int8 | `I16` | widened, exact |
//! | uint16 | `U32` | widened, exact |
//! | uint64 | `I64` | when every value is at most `i64::MAX`; otherwise refused, naming the key and the first value that does not fit |
//! | float8_e5m2, float8_e5m2fnuz, float8_e4m3fnuz | `F16` | widened, exact (NaN, inf and -0.0 kept) |
//! | complex32/64/128, bcomplex32 | refused | candle has no complex dtype: `torch.view_as_real` the tensor before saving |
//! | qint8, quint8, qint32, packed quantized | refused | `dequantize()` in torch before saving |
//! | bits*, uint1..7, int1..7, float4_e2m1fn_x2 | refused | no candle dtype with torch's meaning |
//!
//! A refusal is an error naming the key, the dtype and what to do. [`load`] refuses the whole
//! file on the first such tensor (it never drops one silently); a [`var_builder`] reads only the
//! tensors the model asks for, so a checkpoint with, say, a complex buffer the model does not
//! use still loads. Tensors without storage (`meta`) are refused the same way.
//!
//! # Keys under `state_dict` / `model`
//!
//! Names are ptfile's dotted key paths ([`crate::Checkpoint::tensors`]): a training checkpoint
//! `{"model": state_dict, "optimizer": ...}` names its weights `model.l0.weight`. Candle models
//! ask for `l0.weight`: set the prefix ([`Options::prefix`], [`var_builder_with`],
//! [`load_with`]), e.g. `Options::new().prefix("state_dict")`. Without one, an unknown name's
//! error names the prefixed key the checkpoint has, if any, and the prefix to set.
//!
//! # Devices and the `cuda` features
//!
//! Tensors are created on the candle [`Device`] given ([`Tensor::from_raw_buffer`]): with
//! this crate's feature set that is `Device::Cpu`. ptfile's `candle` feature does not enable
//! candle's own `cuda` feature, so `--features candle,cuda` (ptfile's CUDA backend next to CPU
//! candle) builds. What does not build is candle's `cuda` (`candle-core/cuda`, or
//! `candle-nn/cuda` in the same dependency graph) together with ptfile's `cuda`: both select
//! cudarc's way of finding the driver, candle `dynamic-linking` (linked at build time against
//! the CUDA toolkit, found through `nvcc`), ptfile-cuda `dynamic-loading` (`dlopen` at run
//! time, so it builds without CUDA), and cudarc 0.19's build script refuses the two together
//! ("Both `dynamic-loading` and `dynamic-linking` features are active, this is a bug"; checked
//! with `cargo check --features candle,cuda,candle-core/cuda`). Use one or the other:
//! ptfile's `cuda` for ptfile's own device loads, or candle's `cuda` without ptfile's for
//! candle CUDA tensors, which [`load`] and [`var_builder`] then create on
//! `Device::new_cuda(0)` through `Tensor::from_raw_buffer` (that build needs the CUDA toolkit,
//! `nvcc`, and is not part of ptfile's test run).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType as CDType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};

use crate::error::Error;
use crate::torch::checkpoint::Checkpoint;
use crate::torch::dtype::{float8_to_f64, DType, Float8, Kind};
use crate::torch::tensor::TensorView;

/// The candle-core crate this module builds tensors of, re-exported.
pub use candle_core;
/// The candle-nn crate whose `VarBuilder` this module returns, re-exported.
pub use candle_nn;

/// A ptfile error as a candle error, with ptfile's message.
fn cerr(e: Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn msg(m: String) -> candle_core::Error {
    candle_core::Error::Msg(m).bt()
}

/// How a torch dtype's elements become a candle tensor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conversion {
    /// The bytes as they are, as this candle dtype.
    Same(CDType),
    /// bool -> U8 (the bytes are 0 and 1 already).
    BoolToU8,
    /// int8 -> I16.
    I8ToI16,
    /// uint16 -> U32.
    U16ToU32,
    /// uint64 -> I64 when every value fits.
    U64ToI64,
    /// An 8-bit float candle lacks -> F16, exactly.
    Float8ToF16(Float8),
}

impl Conversion {
    fn target(self) -> CDType {
        match self {
            Conversion::Same(d) => d,
            Conversion::BoolToU8 => CDType::U8,
            Conversion::I8ToI16 => CDType::I16,
            Conversion::U16ToU32 => CDType::U32,
            Conversion::U64ToI64 => CDType::I64,
            Conversion::Float8ToF16(_) => CDType::F16,
        }
    }
}

/// The conversion for `d`, or why there is none.
fn conversion(d: DType) -> std::result::Result<Conversion, String> {
    use Conversion::*;
    Ok(match d.name() {
        "uint8" => Same(CDType::U8),
        "uint32" => Same(CDType::U32),
        "int16" => Same(CDType::I16),
        "int32" => Same(CDType::I32),
        "int64" => Same(CDType::I64),
        "bfloat16" => Same(CDType::BF16),
        "float16" => Same(CDType::F16),
        "float32" => Same(CDType::F32),
        "float64" => Same(CDType::F64),
        "float8_e4m3fn" => Same(CDType::F8E4M3),
        "float8_e8m0fnu" => Same(CDType::F8E8M0),
        "bool" => BoolToU8,
        "int8" => I8ToI16,
        "uint16" => U16ToU32,
        "uint64" => U64ToI64,
        _ => match d.kind() {
            Kind::Float8(f) => Float8ToF16(f),
            Kind::Complex(_) => {
                return Err(
                    "candle has no complex dtype; save torch.view_as_real(t) instead".into(),
                )
            }
            Kind::Quantized => {
                return Err(
                    "candle has no quantized torch dtype; save t.dequantize() instead".into(),
                )
            }
            _ => return Err("candle has no dtype with its meaning".into()),
        },
    })
}

/// The candle dtype [`to_tensor`] gives a tensor of torch dtype `d` (see the module's table),
/// or why it refuses one.
pub fn candle_dtype(d: DType) -> std::result::Result<CDType, String> {
    conversion(d).map(Conversion::target)
}

fn candle_shape(t: &TensorView<'_>) -> candle_core::Result<Vec<usize>> {
    t.shape()
        .iter()
        .map(|&n| usize::try_from(n))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| msg(format!("{}: negative shape {:?}", t.name(), t.shape())))
}

/// One tensor as a candle tensor on `device`: contiguous (strided views copied row-major),
/// little-endian, conj/neg bits resolved, in the candle dtype of the module's table (torch
/// dtypes candle lacks are converted exactly or refused with an error naming the tensor and
/// its dtype). Works on a [`crate::LoadedTensor`] too (it derefs to a [`TensorView`]).
pub fn to_tensor(t: &TensorView<'_>, device: &Device) -> candle_core::Result<Tensor> {
    let name = t.name();
    let conv =
        conversion(t.dtype()).map_err(|why| msg(format!("{name}: dtype {}: {why}", t.dtype())))?;
    if t.tensor().storage.is_none() && t.numel() > 0 {
        return Err(msg(format!(
            "{name}: a tensor on {} has no values (dtype {}, shape {:?})",
            t.tensor().device.as_deref().unwrap_or("meta"),
            t.dtype(),
            t.shape()
        )));
    }
    let shape = candle_shape(t)?;
    let bytes = if t.numel() == 0 {
        std::borrow::Cow::Borrowed(&[][..])
    } else {
        t.to_bytes().map_err(cerr)?
    };
    match conv {
        Conversion::Same(d) => Tensor::from_raw_buffer(&bytes, d, &shape, device),
        Conversion::BoolToU8 => {
            let v: Vec<u8> = bytes.iter().map(|&b| u8::from(b != 0)).collect();
            Tensor::from_vec(v, shape, device)
        }
        Conversion::I8ToI16 => {
            let v: Vec<i16> = bytes.iter().map(|&b| i16::from(b as i8)).collect();
            Tensor::from_vec(v, shape, device)
        }
        Conversion::U16ToU32 => {
            let v: Vec<u32> = bytes
                .chunks_exact(2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
                .collect();
            Tensor::from_vec(v, shape, device)
        }
        Conversion::U64ToI64 => {
            let mut v = Vec::with_capacity(bytes.len() / 8);
            for (k, b) in bytes.chunks_exact(8).enumerate() {
                let x = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                let y = i64::try_from(x).map_err(|_| {
                    msg(format!(
                        "{name}: dtype uint64: element {k} is {x}, above i64::MAX: candle has no \
                         uint64 and I64 cannot hold it"
                    ))
                })?;
                v.push(y);
            }
            Tensor::from_vec(v, shape, device)
        }
        Conversion::Float8ToF16(f) => {
            let v: Vec<half::f16> = bytes
                .iter()
                .map(|&b| half::f16::from_f64(float8_to_f64(f, b)))
                .collect();
            Tensor::from_vec(v, shape, device)
        }
    }
}

/// Options of [`load_with`] and [`var_builder_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Options {
    /// Key path the model's names live under (`state_dict`, `model`, `module.encoder`):
    /// the name `l0.weight` is looked up as `<prefix>.l0.weight`, and [`load_with`] returns
    /// only the tensors under it, with the prefix taken off. Empty: names as they are.
    pub prefix: String,
}

impl Options {
    /// No prefix.
    pub fn new() -> Options {
        Options::default()
    }
    /// Names live under `prefix` (`"state_dict"`, `"model"`; dotted for deeper nesting).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Options {
        self.prefix = prefix.into().trim_end_matches('.').to_string();
        self
    }
}

fn open(path: &Path) -> candle_core::Result<Checkpoint> {
    Checkpoint::open(path).map_err(|e| msg(format!("{}: {e}", path.display())))
}

/// Every tensor of the checkpoint at `path` as a candle tensor on `device`, by ptfile's
/// dotted names ([`crate::Checkpoint::tensors`]); see [`to_tensor`] for the conversion.
/// Refuses the file, naming the key and the dtype, when a tensor has no candle form (use
/// [`var_builder`] to read only what a model needs). What `candle_core::pickle::read_all`
/// does for the files it can read, for every file ptfile reads.
pub fn load(
    path: impl AsRef<Path>,
    device: &Device,
) -> candle_core::Result<HashMap<String, Tensor>> {
    load_with(path, device, &Options::new())
}

/// [`load`] with [`Options`]: with a prefix, only the tensors under it, named without it.
pub fn load_with(
    path: impl AsRef<Path>,
    device: &Device,
    options: &Options,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let ckpt = open(path)?;
    let mut out = HashMap::new();
    for (name, t) in ckpt.tensors() {
        let key = if options.prefix.is_empty() {
            name
        } else {
            match name
                .strip_prefix(options.prefix.as_str())
                .and_then(|r| r.strip_prefix('.'))
            {
                Some(rest) => rest.to_string(),
                None => continue,
            }
        };
        let tensor = to_tensor(&t, device).map_err(|e| msg(format!("{}: {e}", path.display())))?;
        out.insert(key, tensor);
    }
    if out.is_empty() && !options.prefix.is_empty() && ckpt.tensors().next().is_some() {
        return Err(msg(format!(
            "{}: no tensor under the prefix {:?}",
            path.display(),
            options.prefix
        )));
    }
    Ok(out)
}

/// A candle-nn [`SimpleBackend`] over one opened checkpoint: the file is opened (mapped,
/// metadata only) once; each tensor a model asks for is read when asked, checked against the
/// shape the model expects, converted to the dtype it asks for, and put on its device.
///
/// ```
/// use ptfile::candle::{candle_core::{DType, Device}, candle_nn::VarBuilder, Options, PtfileBackend};
/// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/seed_mymodule_state_dict.pt");
/// let backend = PtfileBackend::open(path, Options::new())?;
/// let vb = VarBuilder::from_backend(Box::new(backend), DType::F64, Device::Cpu);
/// assert_eq!(vb.get((2, 4), "l0.weight")?.dtype(), DType::F64);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct PtfileBackend {
    ckpt: Checkpoint,
    path: PathBuf,
    prefix: String,
    names: HashSet<String>,
}

impl std::fmt::Debug for PtfileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtfileBackend")
            .field("path", &self.path)
            .field("prefix", &self.prefix)
            .field("tensors", &self.names.len())
            .finish()
    }
}

impl PtfileBackend {
    /// Opens the checkpoint at `path` (metadata only).
    pub fn open(path: impl AsRef<Path>, options: Options) -> candle_core::Result<PtfileBackend> {
        let path = path.as_ref().to_path_buf();
        let ckpt = open(&path)?;
        Ok(PtfileBackend::from_checkpoint(ckpt, path, options))
    }

    /// A backend over a checkpoint already open (`path` names it in messages).
    pub fn from_checkpoint(
        ckpt: Checkpoint,
        path: impl Into<PathBuf>,
        options: Options,
    ) -> PtfileBackend {
        let names = ckpt.tensors().map(|(n, _)| n).collect();
        PtfileBackend {
            ckpt,
            path: path.into(),
            prefix: options.prefix,
            names,
        }
    }

    /// The checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.ckpt
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The view of `name` (prefixed), or an error with ptfile's close names and, when the
    /// name exists under another key path, the prefix to set.
    fn view(&self, name: &str) -> candle_core::Result<TensorView<'_>> {
        let key = self.key(name);
        self.ckpt.tensor(&key).map_err(|e| {
            let suffix = format!(".{name}");
            let hint = self
                .names
                .iter()
                .filter(|n| n.ends_with(&suffix))
                .min_by_key(|n| (n.len(), n.to_string()))
                .map(|n| {
                    format!(
                        "; the checkpoint has {n}: use ptfile::candle::Options::new().prefix({:?})",
                        &n[..n.len() - suffix.len()]
                    )
                })
                .unwrap_or_default();
            msg(format!("{}: {e}{hint}", self.path.display()))
        })
    }

    fn materialize(
        &self,
        t: &TensorView<'_>,
        dtype: CDType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let x = to_tensor(t, dev).map_err(|e| msg(format!("{}: {e}", self.path.display())))?;
        match (x.dtype(), dtype) {
            (from, to) if from == to => Ok(x),
            // candle 0.11's F8E4M3 -> F64 recurses until the stack overflows (its
            // `WithDType::to_f64` calls itself); through F32 it is exact.
            (CDType::F8E4M3, CDType::F64) => x.to_dtype(CDType::F32)?.to_dtype(dtype),
            _ => x.to_dtype(dtype),
        }
    }
}

impl SimpleBackend for PtfileBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: CDType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.view(name)?;
        let got = Shape::from(candle_shape(&t)?);
        if got != s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!(
                    "shape mismatch for {} in {}",
                    self.key(name),
                    self.path.display()
                ),
                expected: s,
                got,
            }
            .bt());
        }
        self.materialize(&t, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: CDType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.view(name)?;
        self.materialize(&t, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.names.contains(&self.key(name))
    }
}

/// A [`VarBuilder`] over the checkpoint at `path`: tensors are read lazily, one each time the
/// model asks (see [`PtfileBackend`]), shape-checked and converted to `dtype` (a bfloat16
/// checkpoint into a float32 model). `VarBuilder::from_pth` for every file ptfile reads.
pub fn var_builder(
    path: impl AsRef<Path>,
    dtype: CDType,
    device: &Device,
) -> candle_core::Result<VarBuilder<'static>> {
    var_builder_with(path, dtype, device, Options::new())
}

/// [`var_builder`] with [`Options`] (a prefix for keys under `state_dict` / `model`).
pub fn var_builder_with(
    path: impl AsRef<Path>,
    dtype: CDType,
    device: &Device,
    options: Options,
) -> candle_core::Result<VarBuilder<'static>> {
    let backend = PtfileBackend::open(path, options)?;
    Ok(VarBuilder::from_backend(
        Box::new(backend),
        dtype,
        device.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_converts_or_says_why() {
        for d in DType::all() {
            match conversion(d) {
                // Every conversion keeps every value: the target is at least as wide.
                Ok(c) => assert!(c.target().size_in_bytes() >= d.element_size(), "{d}"),
                Err(why) => assert!(!why.is_empty(), "{d}"),
            }
        }
        assert_eq!(candle_dtype(DType::BOOL), Ok(CDType::U8));
        assert_eq!(candle_dtype(DType::FLOAT8_E5M2), Ok(CDType::F16));
        assert!(candle_dtype(DType::COMPLEX64)
            .unwrap_err()
            .contains("view_as_real"));
    }
}
