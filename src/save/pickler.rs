//! The object tree as `torch.save`'s pickler writes it (protocol 2, PYTORCH_FORMAT.md §2):
//! tensors as `torch._utils` rebuild calls, storages as persistent ids numbered in
//! first-encounter order, containers with torch's batching and memo.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::format::pickle::{decimal_to_bigint, PickleWriter};
use crate::torch::dtype::DType;
use crate::torch::model::{key_text, Object, QTensor, SparseTensor, Storage, Tensor};

use super::compact::{Window, MAX_DEPTH};
use super::{SaveOptions, StorageSource};

/// Python's pickler batches APPENDS / SETITEMS by this many items.
const BATCH: usize = 1000;

/// Which persistent ids to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidStyle {
    /// `('storage', type, key, location, numel)` (zip format).
    Zip,
    /// `('storage', type, key, location, numel, None)` (legacy stream).
    Legacy,
}

/// The storage class named in a persistent id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StorageClass {
    /// `torch <X>Storage`.
    Typed(DType),
    /// `torch.storage UntypedStorage` (numel counts bytes).
    Untyped,
}

impl StorageClass {
    fn element_size(self) -> u64 {
        match self {
            StorageClass::Typed(d) => d.element_size() as u64,
            StorageClass::Untyped => 1,
        }
    }
    fn describe(self) -> String {
        match self {
            StorageClass::Typed(d) => {
                format!("torch.{}", d.legacy_storage_class().unwrap_or_default())
            }
            StorageClass::Untyped => "torch.storage.UntypedStorage".into(),
        }
    }
}

/// One storage of the output.
#[derive(Debug, Clone)]
pub(crate) struct OutStorage {
    /// Index of the input storage.
    pub input: usize,
    /// Its key in the output (`"0"`, `"1"`, ...).
    pub key: String,
    /// Class named in its persistent id.
    pub class: StorageClass,
    /// numel written in the persistent id (elements of `class`).
    pub numel: u64,
    /// Location tag written.
    pub location: String,
    /// First byte of the input storage to write.
    pub start: u64,
    /// Number of bytes to write (`numel * element size`).
    pub len: u64,
}

/// A pickled object and the storages it refers to, in key order.
pub(crate) struct Pickled {
    pub bytes: Vec<u8>,
    pub storages: Vec<OutStorage>,
}

/// Pickles `root`.
pub(crate) fn pickle(
    root: &Object,
    src: &dyn StorageSource,
    opts: &SaveOptions,
    style: PidStyle,
    windows: &[Window],
) -> Result<Pickled> {
    let mut p = Pickler {
        w: PickleWriter::new(),
        storages: src.storages(),
        src,
        opts,
        style,
        windows,
        out: Vec::new(),
        by_input: HashMap::new(),
        path: Vec::new(),
    };
    p.obj(root, 0)?;
    Ok(Pickled {
        bytes: p.w.finish(),
        storages: p.out,
    })
}

struct Pickler<'a> {
    w: PickleWriter,
    storages: &'a [Storage],
    src: &'a dyn StorageSource,
    opts: &'a SaveOptions,
    style: PidStyle,
    windows: &'a [Window],
    out: Vec<OutStorage>,
    by_input: HashMap<usize, usize>,
    path: Vec<String>,
}

/// Splits `module.name` at the last dot.
fn split_global(q: &str) -> (&str, &str) {
    match q.rsplit_once('.') {
        Some((m, n)) => (m, n),
        None => ("builtins", q),
    }
}

impl Pickler<'_> {
    fn at(&self) -> String {
        if self.path.is_empty() {
            "the root object".into()
        } else {
            format!("key {}", self.path.join("."))
        }
    }

    fn unsupported(&self, what: String, hint: &str) -> Error {
        Error::Unsupported {
            what,
            location: self.at(),
            hint: hint.into(),
        }
    }

    fn with_path<T>(&mut self, seg: String, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.path.push(seg);
        let r = f(self);
        self.path.pop();
        r
    }

    fn obj(&mut self, o: &Object, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.unsupported(
                format!("objects nested deeper than {MAX_DEPTH} levels"),
                "flatten the structure",
            ));
        }
        let d = depth + 1;
        match o {
            Object::None => self.w.none(),
            Object::Bool(b) => self.w.bool(*b),
            Object::Int(i) => self.w.int(*i),
            Object::BigInt(s) => match s.parse::<i64>() {
                Ok(i) => self.w.int(i),
                Err(_) => {
                    let b = decimal_to_bigint(s).ok_or_else(|| {
                        Error::Usage(format!("{s:?} is not a decimal integer ({})", self.at()))
                    })?;
                    self.w.bigint(&b);
                }
            },
            Object::Float(f) => self.w.float(*f),
            Object::Complex(re, im) => {
                self.w.global("__builtin__", "complex");
                self.w.float(*re);
                self.w.float(*im);
                self.w.tuple(2, false);
                self.w.reduce();
            }
            Object::Str(s) => self.w.str(s),
            Object::Bytes(b) => self.w.bytes(b),
            Object::ByteArray(b) => {
                self.w.global("__builtin__", "bytearray");
                self.w.bytes(b);
                self.w.tuple(1, false);
                self.w.reduce();
            }
            Object::Tuple(xs) => self.tuple(xs, d)?,
            Object::List(xs) => {
                self.w.empty_list();
                self.appends(xs, d)?;
            }
            Object::Set(xs) | Object::FrozenSet(xs) => {
                let name = if matches!(o, Object::Set(_)) {
                    "set"
                } else {
                    "frozenset"
                };
                self.w.global("__builtin__", name);
                self.w.empty_list();
                self.appends(xs, d)?;
                self.w.tuple(1, false);
                self.w.reduce();
            }
            Object::Dict(items) => {
                self.w.empty_dict();
                self.setitems(items, d)?;
            }
            Object::OrderedDict(od) => {
                self.w.global("collections", "OrderedDict");
                self.w.tuple(0, false);
                self.w.reduce();
                self.setitems(&od.items, d)?;
                if let Some(md) = &od.metadata {
                    self.w.empty_dict();
                    self.w.str("_metadata");
                    self.with_path("_metadata".into(), |p| p.obj(md, d))?;
                    self.w.setitem();
                    self.w.build();
                }
            }
            Object::Tensor(t) => self.tensor(t, d)?,
            Object::QTensor(q) => self.qtensor(q, d)?,
            Object::SparseTensor(s) => self.sparse(s, d)?,
            Object::Storage(i) => self.pid(*i, None)?,
            Object::Size(dims) => {
                self.w.global("torch", "Size");
                self.ints(dims);
                self.w.tuple(1, false);
                self.w.reduce();
            }
            Object::Dtype(dt) => self.w.global("torch", dt.name()),
            Object::Device(dev) => {
                self.w.global("torch", "device");
                match dev
                    .split_once(':')
                    .and_then(|(t, i)| Some((t, i.parse::<i64>().ok()?)))
                {
                    Some((ty, idx)) => {
                        self.w.str(ty);
                        self.w.int(idx);
                        self.w.tuple(2, false);
                    }
                    None => {
                        self.w.str(dev);
                        self.w.tuple(1, false);
                    }
                }
                self.w.reduce();
            }
            Object::Named(n) | Object::Global(n) => {
                let (m, name) = split_global(n);
                self.w.global(m, name);
            }
            Object::Opaque(op) => {
                return Err(self.unsupported(
                    format!(
                        "cannot save an object of class {}: only tensors and plain containers",
                        op.class
                    ),
                    "convert to a state dict (model.state_dict()) first",
                ))
            }
            Object::ScriptModule(m) => {
                return Err(self.unsupported(
                    format!(
                        "cannot save a TorchScript module ({}) with torch.save's format",
                        m.class
                    ),
                    "convert to a state dict first, or keep the TorchScript archive",
                ))
            }
            Object::Cycle => {
                return Err(self.unsupported(
                    "cannot save a cyclic structure".into(),
                    "break the cycle before saving",
                ))
            }
        }
        Ok(())
    }

    fn tuple(&mut self, xs: &[Object], d: usize) -> Result<()> {
        let marked = xs.len() > 3;
        if marked {
            self.w.mark();
        }
        for (i, x) in xs.iter().enumerate() {
            self.with_path(i.to_string(), |p| p.obj(x, d))?;
        }
        self.w.tuple(xs.len(), marked);
        Ok(())
    }

    /// APPENDS in batches (after the list is on the stack); a batch of one is `x APPEND`,
    /// as Python's pickler writes it.
    fn appends(&mut self, xs: &[Object], d: usize) -> Result<()> {
        let mut i = 0;
        for batch in xs.chunks(BATCH) {
            let one = batch.len() == 1;
            if !one {
                self.w.mark();
            }
            for x in batch {
                self.with_path(i.to_string(), |p| p.obj(x, d))?;
                i += 1;
            }
            if one {
                self.w.append();
            } else {
                self.w.appends();
            }
        }
        Ok(())
    }

    fn setitems(&mut self, items: &[(Object, Object)], d: usize) -> Result<()> {
        for batch in items.chunks(BATCH) {
            let one = batch.len() == 1;
            if !one {
                self.w.mark();
            }
            for (k, v) in batch {
                self.obj(k, d)?;
                self.with_path(key_text(k), |p| p.obj(v, d))?;
            }
            if one {
                self.w.setitem();
            } else {
                self.w.setitems();
            }
        }
        Ok(())
    }

    fn ints(&mut self, xs: &[i64]) {
        let marked = xs.len() > 3;
        if marked {
            self.w.mark();
        }
        for &x in xs {
            self.w.int(x);
        }
        self.w.tuple(xs.len(), marked);
    }

    /// `collections.OrderedDict()`: the empty backward hooks.
    fn hooks(&mut self) {
        self.w.global("collections", "OrderedDict");
        self.w.tuple(0, false);
        self.w.reduce();
    }

    fn location(&self, s: &Storage) -> String {
        let saved = self
            .opts
            .tagger
            .as_ref()
            .and_then(|t| t(s))
            .unwrap_or_else(|| s.location.clone());
        self.opts.map_location.apply(s, &saved)
    }

    /// Writes the persistent id of input storage `i` viewed as `dtype` (None: the storage
    /// itself).
    fn pid(&mut self, i: usize, dtype: Option<DType>) -> Result<()> {
        let st = self.storages.get(i).ok_or_else(|| {
            Error::Usage(format!(
                "{} refers to storage {i}, but there are {} storages",
                self.at(),
                self.storages.len()
            ))
        })?;
        let class = match dtype {
            Some(d) if d.has_legacy_storage() => StorageClass::Typed(d),
            Some(_) => StorageClass::Untyped,
            None if st.dtype.has_legacy_storage() => StorageClass::Typed(st.dtype),
            None => StorageClass::Untyped,
        };
        if self.style == PidStyle::Legacy && class == StorageClass::Untyped {
            let d = dtype.unwrap_or(st.dtype);
            return Err(self.unsupported(
                format!(
                    "cannot save a {d} tensor in the legacy format: torch has no typed storage class for {d}"
                ),
                "write the zip format (the default) or convert the tensor to another dtype",
            ));
        }
        let idx = match self.by_input.get(&i) {
            Some(&k) => {
                let prev = self.out[k].class;
                if prev != class {
                    return Err(self.unsupported(
                        format!(
                            "storage {:?} is viewed both as {} and as {}; torch cannot save views of one storage with different dtypes",
                            st.key,
                            prev.describe(),
                            class.describe()
                        ),
                        "clone one of the tensors before saving",
                    ));
                }
                k
            }
            None => {
                let win = self.windows.get(i).copied().unwrap_or(Window {
                    start: 0,
                    len: st.nbytes,
                });
                let es = class.element_size();
                let numel = win.len / es;
                let k = self.out.len();
                self.out.push(OutStorage {
                    input: i,
                    key: k.to_string(),
                    class,
                    numel,
                    location: self.location(st),
                    start: win.start,
                    len: numel * es,
                });
                self.by_input.insert(i, k);
                k
            }
        };
        let (key, location, numel) = {
            let o = &self.out[idx];
            (o.key.clone(), o.location.clone(), o.numel)
        };
        self.w.mark();
        self.w.str("storage");
        match class {
            StorageClass::Typed(d) => {
                let name = d.legacy_storage_class().unwrap_or_default();
                self.w.global("torch", &name);
            }
            StorageClass::Untyped => self.w.global("torch.storage", "UntypedStorage"),
        }
        self.w.str(&key);
        self.w.str(&location);
        self.w.int(numel as i64);
        match self.style {
            PidStyle::Zip => self.w.tuple(5, true),
            PidStyle::Legacy => {
                self.w.none();
                self.w.tuple(6, true);
            }
        }
        self.w.binpersid();
        Ok(())
    }

    /// The element offset of `t` in the written storage (shifted by compaction).
    fn offset(&self, t: &Tensor, i: usize) -> i64 {
        let shift = self.windows.get(i).map_or(0, |w| w.start) as i64;
        let es = t.dtype.element_size() as i64;
        (t.storage_offset - shift / es).max(0)
    }

    fn tensor(&mut self, t: &Tensor, d: usize) -> Result<()> {
        if t.is_parameter {
            self.w.global("torch._utils", "_rebuild_parameter");
            self.plain_tensor(t, false, d)?;
            self.w.bool(t.requires_grad);
            self.hooks();
            self.w.tuple(3, false);
            self.w.reduce();
            Ok(())
        } else {
            self.plain_tensor(t, t.requires_grad, d)
        }
    }

    fn plain_tensor(&mut self, t: &Tensor, requires_grad: bool, d: usize) -> Result<()> {
        let Some(i) = t.storage else {
            let dev = t.device.as_deref().unwrap_or("meta");
            if dev != "meta" {
                return Err(self.unsupported(
                    format!(
                        "cannot save a {} tensor on {dev} without storage data",
                        t.dtype
                    ),
                    "only meta tensors have no storage",
                ));
            }
            self.w
                .global("torch._utils", "_rebuild_meta_tensor_no_storage");
            self.w.mark();
            self.w.global("torch", t.dtype.name());
            self.ints(&t.shape);
            self.ints(&t.stride);
            self.w.bool(requires_grad);
            self.w.tuple(4, true);
            self.w.reduce();
            return Ok(());
        };
        if t.dtype.is_shell() {
            return Err(self.unsupported(
                format!("tensor of dtype {} cannot hold data", t.dtype),
                "use a dtype with storage",
            ));
        }
        let legacy = t.dtype.has_legacy_storage();
        self.w.global(
            "torch._utils",
            if legacy {
                "_rebuild_tensor_v2"
            } else {
                "_rebuild_tensor_v3"
            },
        );
        self.w.mark();
        self.pid(i, Some(t.dtype))?;
        self.w.int(self.offset(t, i));
        self.ints(&t.shape);
        self.ints(&t.stride);
        self.w.bool(requires_grad);
        self.hooks();
        let mut n = 6;
        if !legacy {
            self.w.global("torch", t.dtype.name());
            n += 1;
        }
        if let Some(md) = &t.metadata {
            self.obj(md, d)?;
            n += 1;
        }
        self.w.tuple(n, true);
        self.w.reduce();
        Ok(())
    }

    fn qtensor(&mut self, q: &QTensor, d: usize) -> Result<()> {
        let t = &q.int_repr;
        let Some(i) = t.storage else {
            return Err(self.unsupported(
                "quantized tensor without storage".into(),
                "re-save it with torch",
            ));
        };
        self.w.global("torch._utils", "_rebuild_qtensor");
        self.w.mark();
        self.pid(i, Some(t.dtype))?;
        self.w.int(self.offset(t, i));
        self.ints(&t.shape);
        self.ints(&t.stride);
        let scheme = q
            .qscheme
            .strip_prefix("torch.")
            .unwrap_or(&q.qscheme)
            .to_string();
        match (q.scale, q.zero_point, &q.scales, &q.zero_points, q.axis) {
            (Some(scale), Some(zp), _, _, _) => {
                self.w.global("torch", &scheme);
                self.w.float(scale);
                self.w.int(zp);
                self.w.tuple(3, false);
            }
            (_, _, Some(scales), Some(zps), Some(axis)) => {
                self.w.mark();
                self.w.global("torch", &scheme);
                self.plain_tensor(scales, false, d)?;
                self.plain_tensor(zps, false, d)?;
                self.w.int(axis);
                self.w.tuple(4, true);
            }
            _ => {
                return Err(self.unsupported(
                    format!(
                        "quantized tensor with scheme {} lacks its parameters",
                        q.qscheme
                    ),
                    "per-tensor and per-channel affine tensors can be saved",
                ))
            }
        }
        self.w.bool(t.requires_grad);
        self.hooks();
        self.w.tuple(7, true);
        self.w.reduce();
        Ok(())
    }

    fn sparse(&mut self, s: &SparseTensor, d: usize) -> Result<()> {
        let layout = if s.layout.starts_with("torch.") {
            s.layout.clone()
        } else {
            format!("torch.{}", s.layout)
        };
        let coo = layout == "torch.sparse_coo";
        let need = if coo { 2 } else { 3 };
        if s.parts.len() < need {
            return Err(self.unsupported(
                format!("{layout} tensor with {} component tensors", s.parts.len()),
                "re-save it with torch",
            ));
        }
        self.w.global("torch._utils", "_rebuild_sparse_tensor");
        self.w.global("torch.serialization", "_get_layout");
        self.w.str(&layout);
        self.w.tuple(1, false);
        self.w.reduce();
        self.w.mark();
        for p in &s.parts[..need] {
            self.tensor(p, d)?;
        }
        self.w.global("torch", "Size");
        self.ints(&s.shape);
        self.w.tuple(1, false);
        self.w.reduce();
        if coo {
            let c = self.coalesced(&s.parts[0])?;
            self.w.bool(c);
        }
        self.w.tuple(need + if coo { 2 } else { 1 }, true);
        self.w.tuple(2, false);
        self.w.reduce();
        Ok(())
    }

    /// Whether COO indices are sorted and unique (what `is_coalesced()` reports for a
    /// coalesced tensor; torch validates the flag when loading).
    fn coalesced(&self, idx: &Tensor) -> Result<bool> {
        let Some(i) = idx.storage else {
            return Ok(false);
        };
        if idx.shape.len() != 2 {
            return Ok(false);
        }
        // (a huge or stride-0 index tensor is not worth checking: say "not coalesced")
        if idx.numel() > 8 << 20 {
            return Ok(false);
        }
        let bytes = self.src.storage_bytes(i)?;
        let v = crate::torch::elements::elements_i64(idx, &bytes);
        let (ndim, nnz) = (idx.shape[0] as usize, idx.shape[1] as usize);
        if v.len() != ndim * nnz {
            return Ok(false);
        }
        let v = &v;
        let col = |j: usize| (0..ndim).map(move |r| v[r * nnz + j]);
        Ok((1..nnz).all(|j| col(j - 1).lt(col(j))))
    }
}
