//! Building a state dict from your own buffers (borrowed or owned) and saving it.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::torch::dtype::DType;
use crate::torch::model::{Object, OrderedDict, Storage, Tensor};
pub use crate::torch::tensor::Element;

use super::{save, SaveOptions, SaveReport, StorageSource};

/// Owned element buffers kept as their own type (a `Vec<f32>` cannot become a `Vec<u8>`
/// without copying).
trait OwnedBytes: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl<T: Element> OwnedBytes for Vec<T> {
    fn bytes(&self) -> &[u8] {
        T::as_bytes(self)
    }
}

enum Data<'a> {
    Borrowed(&'a [u8]),
    Owned(Box<dyn OwnedBytes + 'a>),
}

impl Data<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Data::Borrowed(b) => b,
            Data::Owned(o) => o.bytes(),
        }
    }
}

/// One tensor's data and how to save it: dtype, shape, and (with the builder methods)
/// whether it is an `nn.Parameter`, requires grad, and its location tag.
pub struct TensorData<'a> {
    dtype: DType,
    shape: Vec<i64>,
    data: Data<'a>,
    parameter: bool,
    requires_grad: bool,
    location: String,
}

fn shape_numel(shape: &[usize]) -> Result<(Vec<i64>, u64)> {
    let mut n: u64 = 1;
    let mut out = Vec::with_capacity(shape.len());
    for &s in shape {
        n = n
            .checked_mul(s as u64)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| Error::Usage(format!("shape {shape:?} has too many elements")))?;
        out.push(s as i64);
    }
    Ok((out, n))
}

impl<'a> TensorData<'a> {
    fn new(dtype: DType, shape: &[usize], data: Data<'a>) -> Result<Self> {
        if dtype.is_shell() {
            return Err(Error::Usage(format!("dtype {dtype} cannot hold data")));
        }
        let (shape64, numel) = shape_numel(shape)?;
        let want = numel
            .checked_mul(dtype.element_size() as u64)
            .ok_or_else(|| Error::Usage(format!("shape {shape:?} is too large")))?;
        let have = data.bytes().len() as u64;
        if have != want {
            return Err(Error::Usage(format!(
                "a {dtype} tensor of shape {shape:?} needs {want} bytes, the buffer has {have}"
            )));
        }
        Ok(TensorData {
            dtype,
            shape: shape64,
            data,
            parameter: false,
            requires_grad: false,
            location: "cpu".into(),
        })
    }

    /// A tensor over borrowed elements (no copy): `data.len()` must be the product of `shape`.
    pub fn from_slice<T: Element>(data: &'a [T], shape: &[usize]) -> Result<Self> {
        Self::new(T::dtype(), shape, Data::Borrowed(T::as_bytes(data)))
    }

    /// A tensor that owns its elements.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        Self::new(T::dtype(), shape, Data::Owned(Box::new(data)))
    }

    /// A tensor of any dtype over raw little-endian bytes (float8, complex, ...), borrowed
    /// or owned.
    pub fn from_bytes(
        dtype: DType,
        bytes: impl Into<Cow<'a, [u8]>>,
        shape: &[usize],
    ) -> Result<Self> {
        let data = match bytes.into() {
            Cow::Borrowed(b) => Data::Borrowed(b),
            Cow::Owned(v) => Data::Owned(Box::new(v)),
        };
        Self::new(dtype, shape, data)
    }

    /// Saves it as an `nn.Parameter` (`_rebuild_parameter`); parameters require grad unless
    /// told otherwise, as `nn.Parameter(t)` does.
    pub fn parameter(mut self, yes: bool) -> Self {
        self.parameter = yes;
        self.requires_grad = yes;
        self
    }

    /// Sets `requires_grad`.
    pub fn requires_grad(mut self, yes: bool) -> Self {
        self.requires_grad = yes;
        self
    }

    /// The location tag to save its storage under (`cpu` by default; `cuda:0` makes
    /// `torch.load` put it on the GPU).
    pub fn location(mut self, loc: impl Into<String>) -> Self {
        self.location = loc.into();
        self
    }
}

/// A state dict under construction: named tensors over borrowed or owned buffers, saved as
/// the `collections.OrderedDict` that `model.state_dict()` gives (see the example of
/// [`crate::save`]).
#[derive(Default)]
pub struct StateDict<'a> {
    names: Vec<String>,
    tensors: Vec<Arc<Tensor>>,
    storages: Vec<Storage>,
    data: Vec<Data<'a>>,
}

impl<'a> StateDict<'a> {
    /// An empty state dict.
    pub fn new() -> Self {
        StateDict {
            names: Vec::new(),
            tensors: Vec::new(),
            storages: Vec::new(),
            data: Vec::new(),
        }
    }

    /// Adds a tensor under `name` (its own storage). Names must be unique.
    pub fn insert(&mut self, name: impl Into<String>, t: TensorData<'a>) -> Result<&mut Self> {
        let name = name.into();
        if self.names.contains(&name) {
            return Err(Error::Usage(format!(
                "the state dict already has a tensor named {name:?}"
            )));
        }
        let i = self.storages.len();
        let nbytes = t.data.bytes().len() as u64;
        self.storages.push(Storage {
            key: i.to_string(),
            dtype: t.dtype,
            location: t.location,
            nbytes,
            data: None,
            typed: true,
        });
        let stride = crate::torch::model::contiguous_strides(&t.shape);
        self.tensors.push(Arc::new(Tensor {
            dtype: t.dtype,
            shape: t.shape,
            stride,
            storage_offset: 0,
            requires_grad: t.requires_grad,
            is_parameter: t.parameter,
            storage: Some(i),
            device: None,
            metadata: None,
        }));
        self.names.push(name);
        self.data.push(t.data);
        Ok(self)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether it has no tensors.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The object that is saved: an `OrderedDict` of name -> tensor.
    pub fn to_object(&self) -> Object {
        let items = self
            .names
            .iter()
            .zip(&self.tensors)
            .map(|(n, t)| (Object::Str(n.as_str().into()), Object::Tensor(t.clone())))
            .collect();
        Object::OrderedDict(Arc::new(OrderedDict {
            items,
            metadata: None,
        }))
    }

    /// Saves it to `path` in the format the path asks for (zip; safetensors for
    /// `*.safetensors`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<SaveReport> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Saves it with options.
    pub fn save_with(&self, path: impl AsRef<Path>, opts: &SaveOptions) -> Result<SaveReport> {
        save(&self.to_object(), self, path, opts)
    }
}

impl StorageSource for StateDict<'_> {
    fn storages(&self) -> &[Storage] {
        &self.storages
    }
    fn storage_bytes(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        let b = self
            .data
            .get(i)
            .ok_or_else(|| Error::Usage(format!("no storage {i}")))?
            .bytes();
        if cfg!(target_endian = "big") {
            let mut v = b.to_vec();
            crate::torch::checkpoint::swap_in_place(&mut v, self.storages[i].dtype.swap_unit());
            return Ok(Cow::Owned(v));
        }
        Ok(Cow::Borrowed(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let v = [1.0f32, 2.0, 3.0];
        assert!(TensorData::from_slice(&v, &[2, 2]).is_err());
        assert!(TensorData::from_slice(&v, &[3]).is_ok());
        let mut sd = StateDict::new();
        sd.insert("a", TensorData::from_slice(&v, &[3, 1]).unwrap())
            .unwrap();
        assert!(sd
            .insert("a", TensorData::from_vec(vec![1u8], &[1]).unwrap())
            .is_err());
        assert_eq!(sd.tensors[0].stride, vec![1, 1]);
        assert_eq!(sd.storage_bytes(0).unwrap().len(), 12);
    }

    #[test]
    fn half_bytes() {
        let v = [half::bf16::from_f32(1.0), half::bf16::from_f32(-2.0)];
        let t = TensorData::from_slice(&v, &[2]).unwrap();
        assert_eq!(t.dtype, DType::BFLOAT16);
        assert_eq!(t.data.bytes().len(), 4);
    }
}
