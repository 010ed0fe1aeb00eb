//! The object tree of a checkpoint as the Python objects torch.load builds: containers and
//! scalars directly, tensors and torch values through the hooks of `ptfile/_build.py` (torch's
//! own constructors: `set_` views over one storage per checkpoint storage, `nn.Parameter`,
//! `_rebuild_qtensor`, `_rebuild_sparse_tensor`).
//!
//! Objects the pickle shared (its memo) are built once and shared, as unpickling does: a
//! tensor, list or dict reachable twice is the same Python object twice, so a memo bomb costs
//! its distinct objects, not its expansion.

use std::collections::HashMap;
use std::sync::Arc;

use ptfile::model::{Object, Opaque, QTensor, SparseTensor, Tensor};
use ptfile::DType;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyComplex, PyDict, PyFrozenSet, PyList, PySet, PyTuple};

use crate::errors::raise;

/// Deepest tree built (shared subtrees can stack deeper than the interpreter's nesting limit;
/// the library refuses to write out trees deeper than 1024 as well).
const MAX_DEPTH: usize = 1024;

/// Classes ptfile keeps opaque that are data torch users get from torch.load: numpy values
/// (torch.load gives them with weights_only=False or allowlisted) and `collections.Counter`.
/// They are rebuilt by `_build.opaque` from their data, never by calling what the file names.
fn known_opaque(class: &str) -> bool {
    class == "numpy.ndarray"
        || class == "collections.Counter"
        || class.starts_with("numpy.dtypes.")
        || matches!(
            class,
            "numpy.bool"
                | "numpy.int8"
                | "numpy.int16"
                | "numpy.int32"
                | "numpy.int64"
                | "numpy.uint8"
                | "numpy.uint16"
                | "numpy.uint32"
                | "numpy.uint64"
                | "numpy.float16"
                | "numpy.float32"
                | "numpy.complex64"
        )
}

/// Builds Python objects for one checkpoint.
pub struct Builder<'py> {
    py: Python<'py>,
    /// The file, for messages.
    file: String,
    /// One torch storage per checkpoint storage.
    storages: Vec<Bound<'py, PyAny>>,
    /// The dtype a bare reference to each storage has (`torch.save(storage)`): its typed
    /// class's, uint8 for untyped storages, as torch's persistent_load gives.
    storage_dtypes: Vec<DType>,
    tensor: Bound<'py, PyAny>,
    parameter: Bound<'py, PyAny>,
    meta_tensor: Bound<'py, PyAny>,
    qtensor: Bound<'py, PyAny>,
    sparse: Bound<'py, PyAny>,
    typed_storage: Bound<'py, PyAny>,
    named: Bound<'py, PyAny>,
    device: Bound<'py, PyAny>,
    ordered_dict: Bound<'py, PyAny>,
    opaque: Bound<'py, PyAny>,
    torch_size: Bound<'py, PyAny>,
    big_int: Bound<'py, PyAny>,
    torch: Bound<'py, PyModule>,
    dtypes: HashMap<DType, Bound<'py, PyAny>>,
    memo: HashMap<usize, Bound<'py, PyAny>>,
    /// Key path of the value being built, for messages.
    path: Vec<String>,
    /// TorchScript modules become their state dict (`load_state_dict`) instead of an error.
    script_state_dict: bool,
    /// Whether a sparse tensor was built (torch validates them after the load).
    pub built_sparse: bool,
}

fn short_key(k: &Object) -> String {
    let s = match k {
        Object::Str(s) => s.to_string(),
        Object::Int(i) => i.to_string(),
        Object::Bool(b) => if *b { "True" } else { "False" }.to_string(),
        Object::None => "None".into(),
        Object::Float(f) => f.to_string(),
        Object::Tuple(_) => "(...)".into(),
        _ => "<key>".into(),
    };
    if s.chars().count() > 64 {
        let mut t: String = s.chars().take(61).collect();
        t.push_str("...");
        t
    } else {
        s
    }
}

impl<'py> Builder<'py> {
    /// A builder over `storages` with the hooks of `hooks` (the `ptfile._build` module).
    pub fn new(
        py: Python<'py>,
        file: String,
        storages: Vec<Bound<'py, PyAny>>,
        storage_dtypes: Vec<DType>,
        hooks: &Bound<'py, PyAny>,
        script_state_dict: bool,
    ) -> PyResult<Self> {
        let torch = py.import("torch")?;
        Ok(Builder {
            py,
            file,
            storages,
            storage_dtypes,
            tensor: hooks.getattr("tensor")?,
            parameter: hooks.getattr("parameter")?,
            meta_tensor: hooks.getattr("meta_tensor")?,
            qtensor: hooks.getattr("qtensor")?,
            sparse: hooks.getattr("sparse")?,
            typed_storage: hooks.getattr("typed_storage")?,
            named: hooks.getattr("named")?,
            device: hooks.getattr("device")?,
            ordered_dict: hooks.getattr("ordered_dict")?,
            opaque: hooks.getattr("opaque")?,
            torch_size: torch.getattr("Size")?,
            big_int: hooks.getattr("big_int")?,
            torch,
            dtypes: HashMap::new(),
            memo: HashMap::new(),
            path: Vec::new(),
            script_state_dict,
            built_sparse: false,
        })
    }

    fn where_(&self) -> String {
        if self.path.is_empty() {
            "the top-level object".into()
        } else {
            format!("key {}", self.path.join("."))
        }
    }

    fn dtype(&mut self, d: DType) -> PyResult<Bound<'py, PyAny>> {
        if let Some(x) = self.dtypes.get(&d) {
            return Ok(x.clone());
        }
        let x = self.torch.getattr(d.name()).map_err(|_| {
            raise(
                self.py,
                "UnsupportedError",
                format!(
                    "unsupported: dtype {d} of {} in {}: this torch ({}) has no torch.{d}; upgrade torch",
                    self.where_(),
                    self.file,
                    self.torch
                        .getattr("__version__")
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                ),
            )
        })?;
        self.dtypes.insert(d, x.clone());
        Ok(x)
    }

    fn storage(&self, i: usize) -> PyResult<Bound<'py, PyAny>> {
        self.storages.get(i).cloned().ok_or_else(|| {
            raise(
                self.py,
                "InvalidCheckpoint",
                format!("no storage {i} (at {}) in {}", self.where_(), self.file),
            )
        })
    }

    fn all(&mut self, xs: &[Object], depth: usize) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let mut out = Vec::with_capacity(xs.len());
        for (i, x) in xs.iter().enumerate() {
            self.path.push(i.to_string());
            let r = self.conv(x, depth + 1);
            self.path.pop();
            out.push(r?);
        }
        Ok(out)
    }

    fn pairs(
        &mut self,
        items: &[(Object, Object)],
        depth: usize,
    ) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        let mut out = Vec::with_capacity(items.len());
        for (k, v) in items {
            let key = self.conv(k, depth + 1)?;
            self.path.push(short_key(k));
            let r = self.conv(v, depth + 1);
            self.path.pop();
            out.push((key, r?));
        }
        Ok(out)
    }

    fn ordered(
        &mut self,
        items: &[(Object, Object)],
        metadata: Option<&Object>,
        depth: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pairs = self.pairs(items, depth)?;
        let list = PyList::new(
            self.py,
            pairs
                .into_iter()
                .map(|(k, v)| PyTuple::new(self.py, [k, v]))
                .collect::<PyResult<Vec<_>>>()?,
        )?;
        let meta = match metadata {
            Some(m) => {
                self.path.push("_metadata".into());
                let r = self.conv(m, depth + 1);
                self.path.pop();
                r?
            }
            None => self.py.None().into_bound(self.py),
        };
        self.ordered_dict.call1((list, meta))
    }

    /// The Python object for `o`.
    pub fn conv(&mut self, o: &Object, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        if depth > MAX_DEPTH {
            return Err(raise(
                self.py,
                "UnsupportedError",
                format!(
                    "unsupported: the object tree of {} is more than {MAX_DEPTH} levels deep (at {}); this is not a weights file",
                    self.file,
                    self.where_()
                ),
            ));
        }
        let key = memo_key(o);
        if let Some(k) = key {
            if let Some(x) = self.memo.get(&k) {
                return Ok(x.clone());
            }
        }
        let py = self.py;
        let x: Bound<'py, PyAny> = match o {
            Object::None => py.None().into_bound(py),
            Object::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
            Object::Int(i) => i.into_pyobject(py)?.into_any(),
            Object::BigInt(s) => self.big_int.call1((&**s,))?,
            Object::Float(f) => f.into_pyobject(py)?.into_any(),
            Object::Complex(re, im) => PyComplex::from_doubles(py, *re, *im).into_any(),
            Object::Str(s) => s.into_pyobject(py)?.into_any(),
            Object::Bytes(b) => PyBytes::new(py, b).into_any(),
            Object::ByteArray(b) => PyByteArray::new(py, b).into_any(),
            Object::Tuple(xs) => {
                let v = self.all(xs, depth)?;
                PyTuple::new(py, v)?.into_any()
            }
            Object::List(xs) => {
                let v = self.all(xs, depth)?;
                PyList::new(py, v)?.into_any()
            }
            Object::Set(xs) => {
                let v = self.all(xs, depth)?;
                PySet::new(py, v)?.into_any()
            }
            Object::FrozenSet(xs) => {
                let v = self.all(xs, depth)?;
                PyFrozenSet::new(py, v)?.into_any()
            }
            Object::Dict(items) => {
                let d = PyDict::new(py);
                for (k, v) in self.pairs(items, depth)? {
                    d.set_item(k, v)?;
                }
                d.into_any()
            }
            Object::OrderedDict(d) => self.ordered(&d.items, d.metadata.as_ref(), depth)?,
            Object::Tensor(t) => self.tensor(t)?,
            Object::QTensor(q) => self.qtensor(q)?,
            Object::SparseTensor(s) => self.sparse(s)?,
            Object::Storage(i) => {
                let s = self.storage(*i)?;
                let d = self.storage_dtypes.get(*i).copied().unwrap_or(DType::UINT8);
                let d = self.dtype(d)?;
                self.typed_storage.call1((s, d))?
            }
            Object::Size(s) => {
                let t = PyTuple::new(py, s.iter())?;
                self.torch_size.call1((t,))?
            }
            Object::Dtype(d) => self.dtype(*d)?,
            Object::Device(s) => self.device.call1((&**s,))?,
            Object::Named(n) => self.named.call1((&**n,))?,
            Object::Global(g) => {
                return Err(raise(
                    py,
                    "UnsafeError",
                    format!(
                        "refusing {}: {} is the global {g} (a class or function as a value), which torch.load(weights_only=True) refuses; nothing was imported or run",
                        self.file,
                        self.where_()
                    ),
                ))
            }
            Object::Opaque(op) => self.opaque(op, depth)?,
            Object::ScriptModule(m) => {
                if !self.script_state_dict {
                    return Err(raise(
                        py,
                        "UnsupportedError",
                        format!(
                            "unsupported: {} is a TorchScript archive ({}), which torch.load(weights_only=True) refuses too (at {}); ptfile.load_state_dict(f) gives its state dict, without running its code",
                            self.file, m.class, self.where_()
                        ),
                    ));
                }
                let items: Vec<(Object, Object)> = m
                    .state_dict
                    .iter()
                    .map(|(k, v)| (Object::Str(k.as_str().into()), v.clone()))
                    .collect();
                self.ordered(&items, m.metadata.as_ref(), depth)?
            }
            Object::Cycle => {
                return Err(raise(
                    py,
                    "UnsupportedError",
                    format!(
                        "unsupported: {} holds a container that contains itself (at {}); ptfile.load does not build cyclic structures",
                        self.file,
                        self.where_()
                    ),
                ))
            }
            other => {
                return Err(raise(
                    py,
                    "UnsupportedError",
                    format!(
                        "unsupported: a value ptfile.load cannot build yet ({other:?}) at {} in {}",
                        self.where_(),
                        self.file
                    ),
                ))
            }
        };
        if let Some(k) = key {
            self.memo.insert(k, x.clone());
        }
        Ok(x)
    }

    fn metadata(&mut self, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
        match &t.metadata {
            Some(m) => self.conv(m, 0),
            None => Ok(self.py.None().into_bound(self.py)),
        }
    }

    fn dense(&mut self, t: &Tensor) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let dtype = self.dtype(t.dtype)?;
        let shape = PyTuple::new(py, t.shape.iter())?;
        let stride = PyTuple::new(py, t.stride.iter())?;
        let grad = t.requires_grad && !t.is_parameter;
        let x = match t.storage {
            Some(i) => {
                let s = self.storage(i)?;
                let meta = self.metadata(t)?;
                self.tensor
                    .call1((s, dtype, t.storage_offset, shape, stride, grad, meta))?
            }
            None => self.meta_tensor.call1((
                dtype,
                shape,
                stride,
                grad,
                t.device.as_deref().unwrap_or("meta"),
            ))?,
        };
        if t.is_parameter {
            self.parameter.call1((x, t.requires_grad))
        } else {
            Ok(x)
        }
    }

    fn tensor(&mut self, t: &Arc<Tensor>) -> PyResult<Bound<'py, PyAny>> {
        self.dense(t)
    }

    fn qtensor(&mut self, q: &QTensor) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let t = &q.int_repr;
        let i = t.storage.ok_or_else(|| {
            raise(
                py,
                "UnsupportedError",
                format!(
                    "unsupported: a quantized tensor without storage at {} in {}",
                    self.where_(),
                    self.file
                ),
            )
        })?;
        let s = self.storage(i)?;
        let dtype = self.dtype(t.dtype)?;
        let shape = PyTuple::new(py, t.shape.iter())?;
        let stride = PyTuple::new(py, t.stride.iter())?;
        let scales = match &q.scales {
            Some(x) => self.dense(x)?,
            None => py.None().into_bound(py),
        };
        let zero_points = match &q.zero_points {
            Some(x) => self.dense(x)?,
            None => py.None().into_bound(py),
        };
        self.qtensor.call1((
            s,
            dtype,
            t.storage_offset,
            shape,
            stride,
            q.qscheme.as_str(),
            q.scale,
            q.zero_point,
            scales,
            zero_points,
            q.axis,
            t.requires_grad,
        ))
    }

    fn sparse(&mut self, s: &SparseTensor) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let mut parts = Vec::with_capacity(s.parts.len());
        for p in &s.parts {
            parts.push(self.dense(p)?);
        }
        let shape = PyTuple::new(py, s.shape.iter())?;
        self.built_sparse = true;
        self.sparse
            .call1((s.layout.as_str(), shape, PyList::new(py, parts)?))
    }

    fn opaque(&mut self, op: &Opaque, depth: usize) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        if !known_opaque(&op.class) {
            return Err(raise(
                py,
                "UnsafeError",
                format!(
                    "refusing {}: {} is an instance of {}, a class torch.load(weights_only=True) refuses; nothing was imported or run (ptfile.inspect shows its data)",
                    self.file,
                    self.where_(),
                    op.class
                ),
            ));
        }
        // An array's arguments are `(numpy.ndarray, (0,), b'b')` (the class and a placeholder);
        // its data is in the state.
        let args = if op.class == "numpy.ndarray" {
            PyList::empty(py)
        } else {
            PyList::new(py, self.all(&op.args, depth)?)?
        };
        let state = match &op.state {
            Some(s) => self.conv(s, depth + 1)?,
            None => py.None().into_bound(py),
        };
        let items = PyList::new(
            py,
            self.pairs(&op.items, depth)?
                .into_iter()
                .map(|(k, v)| PyTuple::new(py, [k, v]))
                .collect::<PyResult<Vec<_>>>()?,
        )?;
        self.opaque
            .call1((op.class.as_str(), args, state, items, self.where_()))
    }
}

/// Identity of a shared object (its allocation), for the memo.
fn memo_key(o: &Object) -> Option<usize> {
    Some(match o {
        Object::Tuple(x) | Object::List(x) | Object::Set(x) | Object::FrozenSet(x) => {
            if x.is_empty() {
                // Empty slices may share a dangling address; build each anew.
                return None;
            }
            x.as_ptr() as usize
        }
        Object::Dict(d) => {
            if d.is_empty() {
                return None;
            }
            d.as_ptr() as usize
        }
        // Strings and bytes too: a pickle can reference one 8 MB string thousands of times.
        Object::Str(x) | Object::BigInt(x) if !x.is_empty() => x.as_ptr() as usize,
        Object::Bytes(x) | Object::ByteArray(x) if !x.is_empty() => x.as_ptr() as usize,
        Object::OrderedDict(d) => Arc::as_ptr(d) as usize,
        Object::Tensor(t) => Arc::as_ptr(t) as usize,
        Object::QTensor(t) => Arc::as_ptr(t) as usize,
        Object::SparseTensor(t) => Arc::as_ptr(t) as usize,
        Object::Opaque(t) => Arc::as_ptr(t) as usize,
        Object::ScriptModule(t) => Arc::as_ptr(t) as usize,
        _ => return None,
    })
}
