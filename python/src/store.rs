//! `ptfile.save`: a Python object tree (containers, scalars, torch values, CPU tensors) as the
//! library's object tree over the tensors' own storages, written by ptfile's writers.
//!
//! Tensors are described by `ptfile._build.SaveContext.tensor` (storage index, dtype, shape,
//! stride, offset), which also collects one CPU buffer per distinct torch storage; the writer
//! reads those buffers in place (no copy) while the GIL is released, and the context keeps them
//! alive until the write is done.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ptfile::model::{Object, OrderedDict, Storage, Tensor};
use ptfile::save::{NonTensors, SaveFormat, SaveOptions, StorageSource};
use ptfile::{DType, MapLocation};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet,
    PyString, PyTuple,
};

use crate::errors::{raise, IntoPy};

/// Deepest Python structure saved (a list that contains itself would never end).
const MAX_DEPTH: usize = 512;

/// The library's `SaveOptions` from the Python arguments.
pub fn save_options(
    py: Python<'_>,
    format: Option<&str>,
    dst: &Path,
    map_location: MapLocation,
    compact: bool,
    non_tensors: &str,
    sync: bool,
) -> PyResult<SaveOptions> {
    let format = match format {
        Some(f) => SaveFormat::parse(f).py_err(py)?,
        None => SaveFormat::for_path(dst),
    };
    let non_tensors = match non_tensors {
        "error" => NonTensors::Error,
        "metadata" => NonTensors::Metadata,
        "skip" => NonTensors::Skip,
        other => {
            return Err(raise(
                py,
                "UsageError",
                format!("non_tensors={other:?}: expected 'error', 'metadata' or 'skip'"),
            ))
        }
    };
    Ok(SaveOptions {
        format: Some(format),
        map_location,
        compact,
        sync,
        non_tensors,
        ..SaveOptions::default()
    })
}

/// Storages whose bytes are CPU memory owned by Python objects the caller keeps alive.
struct Buffers {
    storages: Vec<Storage>,
    /// (address, length) of each storage's bytes.
    spans: Vec<(usize, usize)>,
}

// SAFETY: the spans point into torch CPU storages that the Python caller (the SaveContext)
// keeps alive for the whole save; they are only read.
unsafe impl Send for Buffers {}
unsafe impl Sync for Buffers {}

impl StorageSource for Buffers {
    fn storages(&self) -> &[Storage] {
        &self.storages
    }
    fn storage_bytes(&self, i: usize) -> ptfile::Result<Cow<'_, [u8]>> {
        let (addr, len) = *self
            .spans
            .get(i)
            .ok_or_else(|| ptfile::Error::Usage(format!("no storage {i}")))?;
        if len == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        // SAFETY: see `Buffers`: `len` bytes at `addr` are a live torch CPU storage.
        Ok(Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(addr as *const u8, len)
        }))
    }
}

struct Walker<'py> {
    py: Python<'py>,
    ctx: Bound<'py, PyAny>,
    tensor_cls: Bound<'py, PyAny>,
    size_cls: Bound<'py, PyAny>,
    dtype_cls: Bound<'py, PyAny>,
    device_cls: Bound<'py, PyAny>,
    odict_cls: Bound<'py, PyAny>,
    typed_storage_cls: Bound<'py, PyAny>,
    untyped_storage_cls: Bound<'py, PyAny>,
    path: Vec<String>,
}

impl<'py> Walker<'py> {
    fn where_(&self) -> String {
        if self.path.is_empty() {
            "the object".into()
        } else {
            format!("key {}", self.path.join("."))
        }
    }

    fn usage(&self, what: String) -> PyErr {
        raise(
            self.py,
            "UsageError",
            format!("{what} (at {})", self.where_()),
        )
    }

    fn items(&mut self, o: &Bound<'py, PyAny>, depth: usize) -> PyResult<Vec<Object>> {
        let mut out = Vec::new();
        for (i, x) in o.try_iter()?.enumerate() {
            self.path.push(i.to_string());
            let r = self.walk(&x?, depth + 1);
            self.path.pop();
            out.push(r?);
        }
        Ok(out)
    }

    fn pairs(&mut self, d: &Bound<'py, PyDict>, depth: usize) -> PyResult<Vec<(Object, Object)>> {
        let mut out = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = self.walk(&k, depth + 1)?;
            self.path
                .push(k.str().map(|s| s.to_string()).unwrap_or_default());
            let r = self.walk(&v, depth + 1);
            self.path.pop();
            out.push((key, r?));
        }
        Ok(out)
    }

    fn dtype_of(&self, o: &Bound<'py, PyAny>) -> PyResult<DType> {
        let name = o.str()?.to_string();
        DType::from_name(&name)
            .ok_or_else(|| self.usage(format!("{name} is not a dtype ptfile knows")))
    }

    fn walk(&mut self, o: &Bound<'py, PyAny>, depth: usize) -> PyResult<Object> {
        if depth > MAX_DEPTH {
            return Err(self.usage(format!(
                "the object is more than {MAX_DEPTH} levels deep (a container that contains itself?)"
            )));
        }
        if o.is_none() {
            return Ok(Object::None);
        }
        if let Ok(b) = o.cast::<PyBool>() {
            return Ok(Object::Bool(b.is_true()));
        }
        if o.is_instance(&self.tensor_cls)? {
            return self.tensor(o);
        }
        if let Ok(i) = o.cast::<PyInt>() {
            return Ok(match i.extract::<i64>() {
                Ok(v) => Object::Int(v),
                Err(_) => Object::BigInt(i.str()?.to_string().into()),
            });
        }
        if let Ok(f) = o.cast::<PyFloat>() {
            return Ok(Object::Float(f.value()));
        }
        if let Ok(c) = o.cast::<PyComplex>() {
            return Ok(Object::Complex(c.real(), c.imag()));
        }
        if let Ok(s) = o.cast::<PyString>() {
            return Ok(Object::Str(s.to_cow()?.as_ref().into()));
        }
        if let Ok(b) = o.cast::<PyBytes>() {
            return Ok(Object::Bytes(b.as_bytes().into()));
        }
        if let Ok(b) = o.cast::<PyByteArray>() {
            return Ok(Object::ByteArray(b.to_vec().into()));
        }
        if o.is_instance(&self.size_cls)? {
            let v: Vec<i64> = o.extract()?;
            return Ok(Object::Size(v.into()));
        }
        if o.is_instance(&self.dtype_cls)? {
            return Ok(Object::Dtype(self.dtype_of(o)?));
        }
        if o.is_instance(&self.device_cls)? {
            return Ok(Object::Device(o.str()?.to_string().into()));
        }
        if let Ok(t) = o.cast::<PyTuple>() {
            return Ok(Object::Tuple(self.items(t.as_any(), depth)?.into()));
        }
        if let Ok(l) = o.cast::<PyList>() {
            return Ok(Object::List(self.items(l.as_any(), depth)?.into()));
        }
        if let Ok(s) = o.cast::<PySet>() {
            return Ok(Object::Set(self.items(s.as_any(), depth)?.into()));
        }
        if let Ok(s) = o.cast::<PyFrozenSet>() {
            return Ok(Object::FrozenSet(self.items(s.as_any(), depth)?.into()));
        }
        if let Ok(d) = o.cast::<PyDict>() {
            let items = self.pairs(d, depth)?;
            if o.is_instance(&self.odict_cls)? {
                let mut od = OrderedDict::default();
                od.items = items;
                if let Ok(m) = o.getattr("_metadata") {
                    if !m.is_none() {
                        self.path.push("_metadata".into());
                        let r = self.walk(&m, depth + 1);
                        self.path.pop();
                        od.metadata = Some(r?);
                    }
                }
                return Ok(Object::OrderedDict(Arc::new(od)));
            }
            return Ok(Object::Dict(items.into()));
        }
        if o.is_instance(&self.typed_storage_cls)? || o.is_instance(&self.untyped_storage_cls)? {
            let i: usize = self.ctx.call_method1("storage", (o,))?.extract()?;
            return Ok(Object::Storage(i));
        }
        let ty = o
            .get_type()
            .fully_qualified_name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        Err(self.usage(format!(
            "cannot save a {ty}: ptfile.save writes tensors, containers (dict, OrderedDict, list, tuple, set) and plain values (int, float, complex, str, bytes, None, torch.Size, torch.dtype, torch.device)"
        )))
    }

    fn tensor(&mut self, o: &Bound<'py, PyAny>) -> PyResult<Object> {
        let info = self.ctx.call_method1("tensor", (o, self.where_()))?;
        let (storage, dtype, shape, stride, offset, requires_grad, is_parameter): (
            usize,
            String,
            Vec<i64>,
            Vec<i64>,
            i64,
            bool,
            bool,
        ) = info.extract()?;
        let dtype = DType::from_name(&dtype).ok_or_else(|| {
            self.usage(format!(
                "a tensor of dtype {dtype}, which ptfile does not know"
            ))
        })?;
        let mut t = Tensor::new(dtype, shape, stride, offset, Some(storage));
        t.requires_grad = requires_grad;
        t.is_parameter = is_parameter;
        Ok(Object::Tensor(Arc::new(t)))
    }
}

/// Writes `obj` to `path`; `ctx` is a `ptfile._build.SaveContext` (it describes tensors and
/// holds their buffers). Returns the bytes written.
#[pyfunction]
#[pyo3(signature = (obj, path, ctx, format=None, sync=true))]
pub fn save(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    path: PathBuf,
    ctx: &Bound<'_, PyAny>,
    format: Option<&str>,
    sync: bool,
) -> PyResult<u64> {
    let torch = py.import("torch")?;
    let mut w = Walker {
        py,
        ctx: ctx.clone(),
        tensor_cls: torch.getattr("Tensor")?,
        size_cls: torch.getattr("Size")?,
        dtype_cls: torch.getattr("dtype")?,
        device_cls: torch.getattr("device")?,
        odict_cls: py.import("collections")?.getattr("OrderedDict")?,
        typed_storage_cls: torch.getattr("storage")?.getattr("TypedStorage")?,
        untyped_storage_cls: torch.getattr("UntypedStorage")?,
        path: Vec::new(),
    };
    let root = w.walk(obj, 0)?;
    // (address, nbytes, dtype name, location) per storage, in index order.
    let rows: Vec<(usize, usize, String, String)> = ctx.call_method0("spans")?.extract()?;
    let mut storages = Vec::with_capacity(rows.len());
    let mut spans = Vec::with_capacity(rows.len());
    for (i, (addr, nbytes, dtype, location)) in rows.into_iter().enumerate() {
        let dtype = DType::from_name(&dtype).unwrap_or(DType::UINT8);
        storages.push(Storage::new(i.to_string(), dtype, location, nbytes as u64));
        spans.push((addr, nbytes));
    }
    let src = Buffers { storages, spans };
    let opts = save_options(
        py,
        format,
        &path,
        MapLocation::AsSaved,
        false,
        "error",
        sync,
    )?;
    py.detach(move || {
        on_stack(move || ptfile::save::save(&root, &src, &path, &opts).map(|r| r.bytes))
    })
    .py_err(py)
}

fn on_stack(f: impl FnOnce() -> ptfile::Result<u64> + Send + 'static) -> ptfile::Result<u64> {
    crate::on_big_stack(f)
}
